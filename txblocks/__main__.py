from txblocks.cli import main

raise SystemExit(main())
