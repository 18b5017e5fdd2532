from recmesh.common.server import main
from services.encoder.config import EncoderSettings
from services.encoder.server import build_service

main("encoder", EncoderSettings, build_service)
