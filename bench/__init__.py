"""multitune's benchmarks, one subpackage per family; bench/README.md lists every script and its command.

Run any of them from the repository root as a module, e.g. `python -m bench.peers.compare --help`."""
