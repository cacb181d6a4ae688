// C++'s operator new and delete under the shim: where they come from, every
// form of them (plain, array, nothrow, aligned, sized delete), failure as
// C++ defines it (the new-handler runs, then std::bad_alloc; nothrow gives
// nullptr), and a heap of new'd objects that is evicted and read back.
//
//   cxxnew MIB   prints "operator new from PATH", then lines that must be the
//                same with and without farmem, the last a checksum.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

static int handler_calls = 0;

static void on_new_failure() {
    handler_calls++;
    // Taken away again: the next attempt fails for good and throws.
    std::set_new_handler(nullptr);
}

struct alignas(256) Wide {
    uint64_t v[32];
};

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], nullptr, 10) : 64;
    // Looked up by name, as the program's own calls are bound.
    void *f = dlsym(RTLD_DEFAULT, "_Znwm");
    Dl_info info;
    printf("operator new from %s\n", f && dladdr(f, &info) && info.dli_fname ? info.dli_fname : "?");

    // Failure: a size no allocator gives.
    size_t huge = SIZE_MAX / 4;
    std::set_new_handler(on_new_failure);
    try {
        char *p = new char[huge];
        printf("new of %zu bytes returned %p\n", huge, (void *)p);
    } catch (const std::bad_alloc &) {
        printf("bad_alloc after %d new-handler call(s)\n", handler_calls);
    }
    char *q = new (std::nothrow) char[huge];
    printf("nothrow new of %zu bytes: %s\n", huge, q ? "not null" : "null");
    try {
        void *a = ::operator new(huge, std::align_val_t(64));
        printf("aligned new returned %p\n", a);
    } catch (const std::bad_alloc &) {
        printf("aligned bad_alloc\n");
    }

    // Every form, checked for alignment and freed by its own delete.
    int bad_align = 0;
    for (int i = 0; i < 1000; i++) {
        Wide *w = new Wide;
        Wide *ws = new Wide[3];
        Wide *wn = new (std::nothrow) Wide;
        bad_align += ((uintptr_t)w | (uintptr_t)ws | (uintptr_t)wn) % 256 != 0;
        delete w;
        delete[] ws;
        delete wn;
        int *n = new (std::nothrow) int[17];
        ::operator delete[](n, std::nothrow);
        void *s = ::operator new(100);
        ::operator delete(s, 100);  // sized
    }
    printf("misaligned: %d\n", bad_align);

    // A heap of new'd chunks, written, left alone (evicted), then read back.
    const size_t chunk = 4000;
    size_t n = mib * 1048576 / chunk;
    std::vector<std::unique_ptr<uint64_t[]>> chunks;
    chunks.reserve(n);
    for (size_t i = 0; i < n; i++) {
        chunks.emplace_back(new uint64_t[chunk / 8]);
        for (size_t k = 0; k < chunk / 8; k++) chunks[i][k] = (i * 7 + k) % 1000;
    }
    std::vector<std::string> words;
    for (size_t i = 0; i < n; i++) words.push_back(std::to_string(mix(i)) + std::string(i % 50, 'x'));
    // Time for the evictor to take them.
    usleep(1200 * 1000);
    uint64_t sum = 0, wrong = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < chunk / 8; k++) {
            wrong += chunks[i][k] != (i * 7 + k) % 1000;
            sum = mix(sum ^ chunks[i][k]);
        }
        for (char c : words[i]) sum = mix(sum ^ (unsigned char)c);
    }
    // Half freed and allocated again, in another size: delete of farmem memory.
    for (size_t i = 0; i < n; i += 2) chunks[i].reset(new uint64_t[7]{1, 2, 3, 4, 5, 6, 7});
    for (size_t i = 0; i < n; i += 2) sum = mix(sum ^ chunks[i][6]);
    printf("wrong words: %llu\nchecksum %016llx\n", (unsigned long long)wrong, (unsigned long long)sum);
    return wrong != 0;
}
