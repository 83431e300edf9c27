import torch

from multitune.eval.scoring import candidate_logprobs


def brute_force(model, prompt, candidate):
    ids = torch.tensor([prompt + candidate])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(candidate))


def test_shared_prefix_scoring_equals_separate_full_passes(model):
    prompt = [0, 5, 9, 33, 17, 8, 41]
    candidates = [[12], [30, 31], [7, 8, 9, 10], [30, 99, 4]]
    got = candidate_logprobs(model, prompt, candidates)
    want = torch.tensor([brute_force(model, prompt, c) for c in candidates])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_single_token_candidates_need_no_second_pass(model):
    got = candidate_logprobs(model, [0, 3, 4], [[5], [6]])
    torch.testing.assert_close(got, torch.tensor([brute_force(model, [0, 3, 4], [5]),
                                                  brute_force(model, [0, 3, 4], [6])]), rtol=1e-4, atol=1e-4)
