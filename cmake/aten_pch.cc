// Translation unit that carries the shared precompiled <ATen/ATen.h>.
