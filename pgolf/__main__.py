from pgolf.app.cli import main

raise SystemExit(main())
