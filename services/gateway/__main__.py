from recmesh.common.server import main
from services.gateway.config import GatewaySettings
from services.gateway.server import build_service

main("gateway", GatewaySettings, build_service)
