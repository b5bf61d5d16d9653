"""Commands that move checkpoints and data around: to the Hub (``push``), to and from the GPU machine (``pack``,
``transfer``)."""
