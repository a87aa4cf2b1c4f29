"""bridge.transports"""
