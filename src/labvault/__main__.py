from labvault.cli import main

main()
