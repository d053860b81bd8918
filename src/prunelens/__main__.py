from prunelens.cli import main

raise SystemExit(main())
