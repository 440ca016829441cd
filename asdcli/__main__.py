from asdcli.cli import main

main()
