"""`python -m flows.cli`: the `ravlm` command without installing it."""
from flows.cli import main

main()
