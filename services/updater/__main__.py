from recmesh.common.config import load_settings
from recmesh.common.logs import setup_logging
from recmesh.common.server import main
from services.updater.config import UpdaterSettings
from services.updater.server import build_service

settings = load_settings(UpdaterSettings)
setup_logging("updater", settings.log_level)
main(build_service, settings)
