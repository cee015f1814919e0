"""`python -m bench.gpu_check`, the documented GPU check: see bench.commands.gpu_check."""

from bench.commands.gpu_check import main

if __name__ == "__main__":
    main()
