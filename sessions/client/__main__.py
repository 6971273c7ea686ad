"""`python -m sessions.client` runs the `lucid-sessions` command line."""

from sessions.client.cli import main

raise SystemExit(main())
