from loadctl.cli import main

main()
