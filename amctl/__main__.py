from amctl.cli import main

main()
