from recmesh.common.server import main
from services.updater.config import UpdaterSettings
from services.updater.server import build_service

main("updater", UpdaterSettings, build_service)
