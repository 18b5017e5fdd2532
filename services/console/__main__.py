from services.console.server import main

main()
