from predictor.training.cli import main

raise SystemExit(main())
