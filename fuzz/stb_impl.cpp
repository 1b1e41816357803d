// stb_image / stb_image_write compiled from Debian's headers (libstb-dev, the same release as
// the libstb the main build links), so the fuzz targets instrument the decoder they drive.
// Default configuration, as Debian's libstb: every format stb_image knows is compiled in.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
