"""``python -m cxraug`` (used by torchrun for multi-process training)."""

from cxraug.cli import main

if __name__ == "__main__":
    main()
