"""A class that only some nodes have."""
from processhub import HordeProcess


class OnlySome(HordeProcess):
    async def handle_call(self, message):
        return {"node": self.node, "epoch": self.epoch}
