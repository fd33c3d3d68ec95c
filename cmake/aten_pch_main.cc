int main() { return 0; }  // carries the precompiled <ATen/ATen.h> for executables
