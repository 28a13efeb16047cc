from segad.train import main

raise SystemExit(main())
