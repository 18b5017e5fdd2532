from recmesh.tools.cli import main

main()
