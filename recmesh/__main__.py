from recmesh.cli import main

main()
