from recmesh.common.config import load_settings
from recmesh.common.logs import setup_logging
from recmesh.common.server import main
from services.ranker.config import RankerSettings
from services.ranker.server import build_service

settings = load_settings(RankerSettings)
setup_logging("ranker", settings.log_level)
main(build_service, settings)
