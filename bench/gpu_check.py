"""`python -m bench.gpu_check`, the documented GPU check: its flags are bench.commands.gpu_check,
the check itself bench.execution.gpu_survey."""

from bench.commands.gpu_check import main

if __name__ == "__main__":
    main()
