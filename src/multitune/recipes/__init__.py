"""The recipes: one module per verb that orchestrates a whole command (`train`, `eval`, `data preview`,
`predict`, `doctor`), as torchtune's `recipes/` stand apart from the library they use. They sit on their
own floor just under `cli`: they may import every library module, and no library module imports them."""
