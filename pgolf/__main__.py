from pgolf.cli import main

raise SystemExit(main())
