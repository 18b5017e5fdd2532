from recmesh.common.config import load_settings
from recmesh.common.logs import setup_logging
from recmesh.common.server import main
from services.encoder.config import EncoderSettings
from services.encoder.server import build_service

settings = load_settings(EncoderSettings)
setup_logging("encoder", settings.log_level)
main(build_service, settings)
