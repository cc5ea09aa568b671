# cmake -DIN=page.md -DOUT=build/man/page.md -DVERSION=x.y.z -P version.cmake
# Puts the version into a man page's footer before pandoc reads it.
file(READ "${IN}" text)
string(REPLACE "@CORRAL_VERSION@" "${VERSION}" text "${text}")
file(WRITE "${OUT}" "${text}")
