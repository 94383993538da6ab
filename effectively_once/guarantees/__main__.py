from effectively_once.guarantees.probe_command import main

raise SystemExit(main())
