from predictor.cli import main

raise SystemExit(main())
