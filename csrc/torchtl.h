#pragma once
// torchtl's C++ library in one include: <torchtl/torchtl.h> once installed (cmake --install).
// Narrower headers compile faster: <torchtl/predict/predictor.h> alone is enough to predict.
#include "version.h"

#include "data/datasets.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/map_file.h"
#include "data/transforms.h"
#include "engine/evaluate.h"
#include "engine/trainer.h"
#include "io/load_model.h"
#include "io/model_file.h"
#include "io/pretrained.h"
#include "io/weights.h"
#include "models/fast_path.h"
#include "models/resnet.h"
#include "models/segmentation.h"
#include "predict/predictor.h"
