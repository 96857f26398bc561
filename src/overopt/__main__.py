from overopt.cli import main

main()
