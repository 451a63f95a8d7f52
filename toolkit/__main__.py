from toolkit.cli import main

try:
    main()
finally:
    # CPython (3.11) remembers a KeyboardInterrupt that passed through code exec() ran from a string
    # (dataclasses, namedtuple: a module being imported as Ctrl-C lands), even one we caught, and under
    # `python -m` then ends the process by SIGINT instead of the exit code we chose (130, 143, ...).
    # Each exec of a string starts by forgetting it.
    exec("pass")  # noqa: S102
