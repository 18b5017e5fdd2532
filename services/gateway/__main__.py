from recmesh.common.config import load_settings
from recmesh.common.logs import setup_logging
from recmesh.common.server import main
from services.gateway.config import GatewaySettings
from services.gateway.server import build_service

settings = load_settings(GatewaySettings)
setup_logging("gateway", settings.log_level)
main(build_service, settings)
