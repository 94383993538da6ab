from effectively_once.cli import main

raise SystemExit(main())
