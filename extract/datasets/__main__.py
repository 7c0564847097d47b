from extract.datasets.cli import main

raise SystemExit(main())
