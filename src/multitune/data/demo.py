"""Small demo datasets that multitune writes itself (`source: demo:<name>`), deterministically.

All wording here is our own: no third-party text ships with the package. Each generator composes
sentences from slot lists with a fixed seed, so every machine gets the same rows in the same order.
The tasks are easy enough for the tiny model to learn in a minute on a CPU, and varied enough that
memorising rows does not pass the held-out split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def _rng(name: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: stable across machines and Python versions.
    return random.Random(f"multitune-demo:{name}")


# --- claims: insurance messages, "Claim" / "Not a Claim" --------------------------------------------

_WHEN = ["Yesterday", "Last night", "This morning", "On Sunday", "Two days ago", "Earlier today",
         "Over the weekend", "On my way home"]
_INCIDENT = [
    "a tree branch fell onto my garage roof", "my parked car was hit by a delivery van",
    "a burst pipe flooded the kitchen floor", "someone broke into our flat and took the laptop",
    "hail cracked the windscreen of my car", "a pan fire damaged the kitchen cabinets",
    "my bicycle was stolen from the station rack", "the storm tore several tiles off the roof",
    "another driver reversed into my front bumper", "lightning fried the television and router",
    "my phone was snatched on the bus", "the washing machine leaked through the ceiling below",
    "a falling ladder dented the side of my car", "thieves smashed the window of my van",
    "the basement flooded after heavy rain", "my suitcase was lost on a flight home",
]
_DAMAGE = ["The repair estimate is about 900 euros.", "A garage says the damage is serious.",
           "I have photos of everything.", "The police gave me a report number.",
           "Nobody was hurt, but the damage is clear.", "A builder has already inspected it."]
_ASK = ["I want to file a claim.", "Please open a claim for the damage.",
        "How do I claim for the repairs?", "I need to make a claim on my policy.",
        "Can you start a claim for me?", "I would like compensation under my cover."]
_TOPIC = [
    "Can you send me a quote for adding my son to the car policy?",
    "I moved house and need to update my address.", "What does my contents cover include?",
    "Please change my direct debit to the 15th of the month.",
    "How much would it cost to add breakdown cover?", "I want a copy of my policy documents.",
    "When does my home insurance renew?", "Can I pay the premium yearly instead of monthly?",
    "Is my new phone number saved on the account?", "Do you offer a discount for a second car?",
    "What is the excess on my travel insurance?", "I would like to cancel the pet cover at renewal.",
    "Could you explain the no-claims bonus?", "How do I log in to the online portal?",
    "Does the policy cover driving abroad?", "Please email me last year's statement.",
]
_HELLO = ["Hello,", "Hi there,", "Good morning,", "Dear team,", "Hi,", ""]
_THANKS = ["Thanks.", "Thank you for your help.", "Kind regards.", "Cheers.", ""]


def claims(n: int = 400) -> list[Row]:
    """Insurance messages labelled `Claim` (an incident with loss, asking for cover) or `Not a Claim`."""
    rng = _rng("claims")
    rows = []
    for _ in range(n):
        if rng.random() < 0.5:
            text = f"{rng.choice(_WHEN)} {rng.choice(_INCIDENT)}. {rng.choice(_DAMAGE)} {rng.choice(_ASK)}"
            label = "Claim"
        else:
            text = f"{rng.choice(_HELLO)} {rng.choice(_TOPIC)} {rng.choice(_THANKS)}".strip()
            label = "Not a Claim"
        rows.append({"text": text, "label": label})
    return rows


# --- intents: banking requests, 12 intents ---------------------------------------------------------

_INTENTS = {
    "card_lost": ["I lost my {card} card", "my {card} card is missing", "I can't find my {card} card anywhere",
                  "I think I dropped my {card} card"],
    "card_arrival": ["when will my new {card} card arrive", "my {card} card has not been delivered yet",
                     "how long does a {card} card take to come", "is my {card} card on its way"],
    "change_pin": ["how do I change my PIN", "I want a new PIN for my {card} card", "can I reset my PIN",
                   "I forgot my PIN and need to set another"],
    "balance": ["what is my balance", "how much money is in my account", "show me my current balance",
                "can you tell me what is left in my account"],
    "transfer_failed": ["my transfer of {amount} failed", "the {amount} payment to my friend did not go through",
                        "why was my transfer of {amount} declined", "a transfer I made bounced back"],
    "exchange_rate": ["what rate do you use for {currency}", "how much is one euro in {currency}",
                      "what is the exchange rate to {currency} today", "is the {currency} rate fair"],
    "open_account": ["I want to open an account", "how can I open a savings account",
                     "can I open a second account", "what do I need to open an account"],
    "close_account": ["please close my account", "I want to shut my account down",
                      "how do I close my account for good", "cancel my account please"],
    "atm_cash": ["the ATM kept my {card} card", "the cash machine gave me less than {amount}",
                 "an ATM took my money but gave no cash", "the ATM swallowed my {card} card"],
    "refund": ["I am still waiting for a refund of {amount}", "where is my refund from the shop",
               "a merchant refund of {amount} never showed up", "how long do refunds take"],
    "direct_debit": ["a direct debit I do not recognise took {amount}", "cancel the direct debit to my gym",
                     "how do I set up a direct debit", "a direct debit came out twice"],
    "top_up": ["my top up of {amount} did not work", "how do I top up with my {card} card",
               "can I top up by bank transfer", "the top up is still pending"],
}
_CARD = ["debit", "credit", "virtual", "visa", "mastercard", "contactless"]
_AMOUNT = ["20 euros", "50 pounds", "100 dollars", "35 euros", "250 pounds", "12 dollars"]
_CURRENCY = ["dollars", "pounds", "yen", "francs", "pesos", "kroner"]
_PREFIX = ["", "hi, ", "hello, ", "please help, ", "quick question: ", "urgent: "]
_SUFFIX = ["", "?", ".", " please", ", thanks", "!"]


def intents(n: int = 600) -> list[Row]:
    """Short banking requests, each labelled with one of 12 intents."""
    rng = _rng("intents")
    names = list(_INTENTS)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        text = rng.choice(_INTENTS[label]).format(
            card=rng.choice(_CARD), amount=rng.choice(_AMOUNT), currency=rng.choice(_CURRENCY))
        rows.append({"text": f"{rng.choice(_PREFIX)}{text}{rng.choice(_SUFFIX)}", "label": label})
    rng.shuffle(rows)
    return rows


# --- quiz: 5-way multiple choice riddles ------------------------------------------------------------
#
# A riddle strings together clues about one of five answers; each riddle family keeps its five choices in
# one fixed order. The right letter therefore follows from the clues, spread over the whole question, which
# the tiny model can pick up in a minute. (Shuffled choices add a pointer from the matching choice back to
# its letter; measured here, the tiny model was still at chance after 6 epochs of that, LoRA and full
# fine-tuning alike.)

_RIDDLES = [
    ("Which animal is it?", ["elephant", "giraffe", "penguin", "snake", "owl"], {
        "elephant": ["it has a long trunk", "it has huge flapping ears", "it is grey and heavy",
                     "it has ivory tusks", "it never forgets, people say"],
        "giraffe": ["it has a very long neck", "it eats leaves from tall trees", "its coat has brown patches",
                    "it is the tallest animal", "it has long thin legs"],
        "penguin": ["it cannot fly", "it swims in icy water", "it is black and white",
                    "it waddles on the ice", "it lives near the south pole"],
        "snake": ["it has no legs", "it slides on its belly", "it sheds its skin",
                  "it flicks its forked tongue", "some of its kind are venomous"],
        "owl": ["it hunts at night", "it hoots in the dark", "it can turn its head far round",
                "it has big round eyes", "it flies without a sound"],
    }),
    ("Which thing is it?", ["umbrella", "clock", "kettle", "ladder", "candle"], {
        "umbrella": ["it keeps the rain off", "you open it over your head", "it folds up small",
                     "it has thin metal ribs", "you take it out on wet days"],
        "clock": ["it tells the time", "it has hands but no fingers", "it ticks all day",
                  "it hangs on the wall", "its alarm wakes you up"],
        "kettle": ["it boils water", "it whistles when ready", "it has a spout and a handle",
                   "you use it to make tea", "it sits in the kitchen"],
        "ladder": ["it has rungs", "you climb it to reach high places", "it leans against a wall",
                   "painters carry it around", "it helps you reach the roof"],
        "candle": ["it is made of wax", "it has a wick", "it gives a small flame",
                   "it melts as it burns", "you light it when the power fails"],
    }),
    ("Which place is it?", ["library", "beach", "hospital", "airport", "bakery"], {
        "library": ["you borrow books there", "people whisper there", "it has long shelves",
                    "you need a card to take things home", "students study there"],
        "beach": ["it has sand and waves", "people swim and sunbathe there", "you build castles there",
                  "it is by the sea", "you find shells there"],
        "hospital": ["doctors and nurses work there", "sick people are cared for there",
                     "ambulances arrive there", "it has wards and beds", "surgeons operate there"],
        "airport": ["planes take off there", "you check in your luggage there", "it has gates and runways",
                    "you show a boarding pass there", "travellers wait for flights there"],
        "bakery": ["bread is baked there", "it smells of fresh rolls", "you buy cakes there",
                   "the ovens start before dawn", "it sells croissants"],
    }),
]
LETTERS = ["A", "B", "C", "D", "E"]


def quiz(n: int = 500) -> list[Row]:
    """Five-way multiple choice riddles (animals, things, places), lettered A-E."""
    rng = _rng("quiz")
    rows = []
    for i in range(n):
        ask, choices, clues = _RIDDLES[i % len(_RIDDLES)]
        answer = rng.choice(choices)
        picked = rng.sample(clues[answer], 3)
        riddle = f"{picked[0].capitalize()}, {picked[1]} and {picked[2]}. {ask}"
        rows.append({
            "id": f"quiz-{i}",
            "question": riddle,
            "choices": {"label": list(LETTERS), "text": list(choices)},
            "answerKey": LETTERS[choices.index(answer)],
        })
    return rows


# --- instruct: small word transformations (alpaca layout) ------------------------------------------

_WORDS = ["river", "stone", "cloud", "lamp", "garden", "window", "paper", "forest", "candle", "bridge",
          "mountain", "pencil", "ocean", "basket", "ladder", "mirror", "rocket", "wallet", "feather", "castle"]
_OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("open", "closed"), ("early", "late"),
              ("light", "dark"), ("full", "empty"), ("old", "new"), ("up", "down"), ("happy", "sad"),
              ("strong", "weak"), ("rich", "poor"), ("wet", "dry"), ("loud", "quiet"), ("hard", "soft")]
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _reverse(rng: random.Random) -> Row:
    words = rng.sample(_WORDS, rng.randint(3, 5))
    return {"instruction": "Reverse the order of these words.", "input": " ".join(words),
            "output": " ".join(reversed(words))}


def _sort(rng: random.Random) -> Row:
    words = rng.sample(_WORDS, rng.randint(3, 5))
    return {"instruction": "Sort these words alphabetically.", "input": " ".join(words),
            "output": " ".join(sorted(words))}


def _opposite(rng: random.Random) -> Row:
    a, b = rng.choice(_OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    return {"instruction": "Give the opposite of the word.", "input": a, "output": b}


def _count(rng: random.Random) -> Row:
    words = rng.sample(_WORDS, rng.randint(1, 9))
    return {"instruction": "How many words are there? Answer with a word.", "input": " ".join(words),
            "output": _NUMBERS[len(words)]}


_MAKERS: list[Callable[[random.Random], Row]] = [_reverse, _sort, _opposite, _count]


def instruct(n: int = 240) -> list[Row]:
    """Instruction / input / output rows: reverse, sort, opposite, count."""
    rng = _rng("instruct")
    return [_MAKERS[i % len(_MAKERS)](rng) for i in range(n)]


DATASETS: dict[str, Callable[[], list[Row]]] = {
    "claims": claims,
    "intents": intents,
    "quiz": quiz,
    "instruct": instruct,
}
