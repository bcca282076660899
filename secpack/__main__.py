"""``python -m secpack``: the same command line as the ``secpack`` script."""

from secpack.entry import main

main()
