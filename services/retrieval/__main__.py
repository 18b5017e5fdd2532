from recmesh.common.config import load_settings
from recmesh.common.logs import setup_logging
from recmesh.common.server import main
from services.retrieval.config import RetrievalSettings
from services.retrieval.server import build_service

settings = load_settings(RetrievalSettings)
setup_logging("retrieval", settings.log_level)
main(build_service, settings)
