from shmkit.cli import main

raise SystemExit(main())
