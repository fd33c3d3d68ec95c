# Writes OUT as a C++ raw string literal holding the contents of IN.
file(READ ${IN} _content)
file(WRITE ${OUT} "R\"diffmesh_json(${_content})diffmesh_json\"\n")
