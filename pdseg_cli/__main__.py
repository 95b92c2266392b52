"""``python -m pdseg_cli`` (also what ``torchrun -m pdseg_cli`` runs)."""

from pdseg_cli.console import main

if __name__ == "__main__":
    main()
