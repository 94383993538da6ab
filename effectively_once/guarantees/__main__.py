from effectively_once.guarantees.cli import main

raise SystemExit(main())
