"""Torch modules: recurrent layers that drop in for torch.nn, plus MGU and MinGRU."""

from .cells import LAYOUTS, CellLayout
from .recurrent import GRU, LSTM, MGU, RNN, MGU_VARIANTS, MinGRU, RecurrentLayer

__all__ = ["GRU", "LSTM", "RNN", "MGU", "MinGRU", "RecurrentLayer", "MGU_VARIANTS", "LAYOUTS", "CellLayout"]
