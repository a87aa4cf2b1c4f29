"""bridge.streams"""
