/*
 * fake_nvml.c - a scenario-driven stand-in for libnvidia-ml.so.1.
 *
 * pynvml dlopen()s "libnvidia-ml.so.1" and calls NVML's C functions through
 * ctypes.  Building this file under that name and putting its directory first
 * on LD_LIBRARY_PATH lets the real pynvml code run on a machine without a GPU.
 * Only the functions the template's checker uses are implemented; pynvml turns
 * any other call into NVMLError_FunctionNotFound.
 *
 * The machine it pretends to be is read at init time from the text file named
 * by $NVML_STUB_SCENARIO, one directive per line ('#' starts a comment line):
 *
 *   init_error 9                  nvmlInit* fails with this nvmlReturn_t
 *   driver 575.57.08              nvmlSystemGetDriverVersion
 *   cuda 12090                    nvmlSystemGetCudaDriverVersion[_v2]
 *   gpu name=NVIDIA A100-SXM4-40GB|uuid=GPU-...|cc=8.0|memory_mib=40960|mig=1,1|compute_mode=0|mig_devices=MIG-a,MIG-b
 *
 * Each "gpu" line adds the next device index.  Its fields are '|'-separated
 * key=value pairs (names contain spaces); mig is "current,pending" or
 * "unsupported".  Without a readable scenario the library behaves like a
 * driver with no GPUs and version "0.0".  A malformed scenario makes init
 * fail with NVML_ERROR_UNKNOWN and a message on stderr, so that a typo in a
 * test cannot pass unnoticed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

#define MAX_GPUS 16
/* The most MIG devices one GPU can hold; what NVML reports for A100/H100. */
#define MAX_MIG_DEVICES 7
/* NVML_DEVICE_NAME_V2_BUFFER_SIZE and NVML_DEVICE_UUID_V2_BUFFER_SIZE. */
#define DEVICE_STRING_SIZE 96
/* NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE. */
#define DRIVER_STRING_SIZE 80
#define MIB (1024ULL * 1024ULL)

/* What an nvmlDevice_t points at, for GPUs and MIG devices alike. */
struct nvmlDevice_st {
    char name[DEVICE_STRING_SIZE];
    char uuid[DEVICE_STRING_SIZE];
};
typedef struct nvmlDevice_st *nvmlDevice_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

struct gpu {
    struct nvmlDevice_st device; /* the GPU's handle is &device */
    int cc_major, cc_minor;
    unsigned long long memory_mib;
    int mig_supported;
    unsigned int mig_current, mig_pending;
    unsigned int compute_mode;
    unsigned int mig_count;
    struct nvmlDevice_st mig[MAX_MIG_DEVICES];
};

static struct {
    int init_count; /* NVML reference-counts init/shutdown pairs */
    int init_error; /* an nvmlReturn_t, but read with sscanf("%d") */
    char driver[DRIVER_STRING_SIZE];
    int cuda;
    unsigned int gpu_count;
    struct gpu gpus[MAX_GPUS];
} state;

/* Copies src into a caller's buffer the way NVML does: whole or not at all. */
static nvmlReturn_t copy_string(char *dest, unsigned int length, const char *src)
{
    if (dest == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(dest, src);
    return NVML_SUCCESS;
}

/* Like copy_string, for the fixed-size fields of the scenario's structs. */
static int set_field(char *dest, size_t size, const char *src)
{
    if (strlen(src) + 1 > size)
        return -1;
    strcpy(dest, src);
    return 0;
}

static int parse_gpu_field(struct gpu *gpu, const char *key, char *value)
{
    char *saveptr, *uuid;

    if (strcmp(key, "name") == 0)
        return set_field(gpu->device.name, sizeof gpu->device.name, value);
    if (strcmp(key, "uuid") == 0)
        return set_field(gpu->device.uuid, sizeof gpu->device.uuid, value);
    if (strcmp(key, "cc") == 0)
        return sscanf(value, "%d.%d", &gpu->cc_major, &gpu->cc_minor) == 2 ? 0 : -1;
    if (strcmp(key, "memory_mib") == 0)
        return sscanf(value, "%llu", &gpu->memory_mib) == 1 ? 0 : -1;
    if (strcmp(key, "compute_mode") == 0)
        return sscanf(value, "%u", &gpu->compute_mode) == 1 ? 0 : -1;
    if (strcmp(key, "mig") == 0) {
        gpu->mig_supported = strcmp(value, "unsupported") != 0;
        if (!gpu->mig_supported)
            return 0;
        return sscanf(value, "%u,%u", &gpu->mig_current, &gpu->mig_pending) == 2 ? 0 : -1;
    }
    if (strcmp(key, "mig_devices") == 0) {
        for (uuid = strtok_r(value, ",", &saveptr); uuid != NULL; uuid = strtok_r(NULL, ",", &saveptr)) {
            if (gpu->mig_count == MAX_MIG_DEVICES)
                return -1;
            if (set_field(gpu->mig[gpu->mig_count++].uuid, DEVICE_STRING_SIZE, uuid) != 0)
                return -1;
        }
        return 0;
    }
    return -1;
}

/* Parses the fields of one "gpu" line, in any order. */
static int parse_gpu(char *fields)
{
    struct gpu *gpu;
    char *saveptr, *field, *eq;
    unsigned int i;

    if (state.gpu_count == MAX_GPUS)
        return -1;
    gpu = &state.gpus[state.gpu_count++]; /* zeroed by load_scenario */
    gpu->mig_supported = 1;
    for (field = strtok_r(fields, "|", &saveptr); field != NULL; field = strtok_r(NULL, "|", &saveptr)) {
        eq = strchr(field, '=');
        if (eq == NULL)
            return -1;
        *eq = '\0';
        if (parse_gpu_field(gpu, field, eq + 1) != 0)
            return -1;
    }
    /* Real MIG names read like "NVIDIA A100-SXM4-40GB MIG 1g.5gb". */
    if (gpu->mig_count > 0 && strlen(gpu->device.name) + sizeof " MIG" > DEVICE_STRING_SIZE)
        return -1;
    for (i = 0; i < gpu->mig_count; i++) {
        strcpy(gpu->mig[i].name, gpu->device.name);
        strcat(gpu->mig[i].name, " MIG");
    }
    return 0;
}

static int parse_line(char *line)
{
    char *value;

    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '\0' || line[0] == '#')
        return 0;
    value = strchr(line, ' ');
    if (value == NULL)
        return -1;
    *value++ = '\0';
    if (strcmp(line, "init_error") == 0)
        return sscanf(value, "%d", &state.init_error) == 1 ? 0 : -1;
    if (strcmp(line, "driver") == 0)
        return set_field(state.driver, sizeof state.driver, value);
    if (strcmp(line, "cuda") == 0)
        return sscanf(value, "%d", &state.cuda) == 1 ? 0 : -1;
    if (strcmp(line, "gpu") == 0)
        return parse_gpu(value);
    return -1;
}

/* Resets the fake machine and fills it from $NVML_STUB_SCENARIO. */
static nvmlReturn_t load_scenario(void)
{
    const char *path = getenv("NVML_STUB_SCENARIO");
    char line[1024];
    int lineno = 0;
    FILE *file;

    memset(&state, 0, sizeof state);
    strcpy(state.driver, "0.0");
    if (path == NULL || (file = fopen(path, "r")) == NULL)
        return NVML_SUCCESS;
    while (fgets(line, sizeof line, file) != NULL) {
        lineno++;
        /* A line longer than the buffer would otherwise be read as two. */
        if ((strchr(line, '\n') == NULL && !feof(file)) || parse_line(line) != 0) {
            fprintf(stderr, "fake_nvml: %s:%d: invalid scenario line\n", path, lineno);
            fclose(file);
            return NVML_ERROR_UNKNOWN;
        }
    }
    fclose(file);
    return NVML_SUCCESS;
}

static struct gpu *find_gpu(nvmlDevice_t device)
{
    unsigned int i;

    for (i = 0; i < state.gpu_count; i++)
        if (device == &state.gpus[i].device)
            return &state.gpus[i];
    return NULL;
}

/* Any valid handle, GPU or MIG device, for the calls that accept both. */
static int is_device(nvmlDevice_t device)
{
    unsigned int i, j;

    if (find_gpu(device) != NULL)
        return 1;
    for (i = 0; i < state.gpu_count; i++)
        for (j = 0; j < state.gpus[i].mig_count; j++)
            if (device == &state.gpus[i].mig[j])
                return 1;
    return 0;
}

/*
 * The checks every GPU-only call starts with.  A MIG device handle is valid
 * but answers none of these, so it gets NOT_SUPPORTED, not INVALID_ARGUMENT.
 */
static nvmlReturn_t check_gpu(nvmlDevice_t device, const void *out, struct gpu **gpu)
{
    if (state.init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (out == NULL || !is_device(device))
        return NVML_ERROR_INVALID_ARGUMENT;
    *gpu = find_gpu(device);
    return *gpu == NULL ? NVML_ERROR_NOT_SUPPORTED : NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    nvmlReturn_t ret;

    (void)flags;
    if (state.init_count > 0) {
        state.init_count++;
        return NVML_SUCCESS;
    }
    ret = load_scenario();
    if (ret == NVML_SUCCESS)
        ret = (nvmlReturn_t)state.init_error;
    if (ret == NVML_SUCCESS)
        state.init_count = 1;
    return ret;
}

nvmlReturn_t nvmlShutdown(void)
{
    if (state.init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    state.init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS:
        return "Success";
    case NVML_ERROR_UNINITIALIZED:
        return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
        return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED:
        return "Not Supported";
    case NVML_ERROR_NO_PERMISSION:
        return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND:
        return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE:
        return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED:
        return "Driver Not Loaded";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return "RM has detected an NVML/RM version mismatch.";
    default:
        return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (state.init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    return copy_string(version, length, state.driver);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    if (state.init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (cudaDriverVersion == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = state.cuda;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    if (state.init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (deviceCount == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = state.gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (state.init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= state.gpu_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &state.gpus[index].device;
    return NVML_SUCCESS;
}

/* Finds GPUs and MIG devices alike, as the real call does. */
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    unsigned int i, j;

    if (state.init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (uuid == NULL || device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < state.gpu_count; i++) {
        struct gpu *gpu = &state.gpus[i];

        if (strcmp(gpu->device.uuid, uuid) == 0) {
            *device = &gpu->device;
            return NVML_SUCCESS;
        }
        for (j = 0; j < gpu->mig_count; j++) {
            if (strcmp(gpu->mig[j].uuid, uuid) == 0) {
                *device = &gpu->mig[j];
                return NVML_SUCCESS;
            }
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    if (state.init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (!is_device(device))
        return NVML_ERROR_INVALID_ARGUMENT;
    return copy_string(name, length, device->name);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    if (state.init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    if (!is_device(device))
        return NVML_ERROR_INVALID_ARGUMENT;
    return copy_string(uuid, length, device->uuid);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    struct gpu *gpu;
    nvmlReturn_t ret = check_gpu(device, index, &gpu);

    if (ret == NVML_SUCCESS)
        *index = (unsigned int)(gpu - state.gpus);
    return ret;
}

/* An idle GPU: everything free, nothing used. */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    struct gpu *gpu;
    nvmlReturn_t ret = check_gpu(device, memory, &gpu);

    if (ret == NVML_SUCCESS) {
        memory->total = gpu->memory_mib * MIB;
        memory->free = memory->total;
        memory->used = 0;
    }
    return ret;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor)
{
    struct gpu *gpu;
    nvmlReturn_t ret = check_gpu(device, major, &gpu);

    if (ret == NVML_SUCCESS && minor == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS) {
        *major = gpu->cc_major;
        *minor = gpu->cc_minor;
    }
    return ret;
}

nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t device, unsigned int *mode)
{
    struct gpu *gpu;
    nvmlReturn_t ret = check_gpu(device, mode, &gpu);

    if (ret == NVML_SUCCESS)
        *mode = gpu->compute_mode;
    return ret;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    struct gpu *gpu;
    nvmlReturn_t ret = check_gpu(device, currentMode, &gpu);

    if (ret == NVML_SUCCESS && pendingMode == NULL)
        ret = NVML_ERROR_INVALID_ARGUMENT;
    if (ret == NVML_SUCCESS && !gpu->mig_supported)
        ret = NVML_ERROR_NOT_SUPPORTED;
    if (ret == NVML_SUCCESS) {
        *currentMode = gpu->mig_current;
        *pendingMode = gpu->mig_pending;
    }
    return ret;
}

/* As documented for NVML: 0 unless MIG is supported and currently enabled. */
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    struct gpu *gpu;
    nvmlReturn_t ret = check_gpu(device, count, &gpu);

    if (ret == NVML_SUCCESS)
        *count = gpu->mig_supported && gpu->mig_current ? MAX_MIG_DEVICES : 0;
    return ret;
}

/*
 * Slots past the scenario's MIG devices but under the maximum are empty, and
 * NVML reports an empty slot as NOT_FOUND; callers loop over all of them.
 */
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *migDevice)
{
    struct gpu *gpu;
    unsigned int max_count;
    nvmlReturn_t ret = check_gpu(device, migDevice, &gpu);

    if (ret != NVML_SUCCESS)
        return ret;
    nvmlDeviceGetMaxMigDeviceCount(device, &max_count);
    if (index >= max_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (index >= gpu->mig_count)
        return NVML_ERROR_NOT_FOUND;
    *migDevice = &gpu->mig[index];
    return NVML_SUCCESS;
}
