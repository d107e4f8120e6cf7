// Creates a compute pipeline from a SPIR-V file on the first Vulkan device (lavapipe here).
#include <vulkan/vulkan.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb"); fseek(f, 0, SEEK_END); long n = ftell(f); rewind(f);
    uint32_t *code = malloc(n); fread(code, 1, n, f); fclose(f);
    VkApplicationInfo app = {VK_STRUCTURE_TYPE_APPLICATION_INFO, 0, "repro", 1, 0, 0, VK_API_VERSION_1_3};
    VkInstanceCreateInfo ici = {VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, 0, 0, &app};
    VkInstance inst; if (vkCreateInstance(&ici, 0, &inst)) return 2;
    uint32_t c = 1; VkPhysicalDevice pd; vkEnumeratePhysicalDevices(inst, &c, &pd);
    VkPhysicalDeviceProperties p; vkGetPhysicalDeviceProperties(pd, &p); printf("device: %s\n", p.deviceName);
    VkPhysicalDeviceVulkan12Features f12 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    f12.bufferDeviceAddress = 1; f12.vulkanMemoryModel = 1; f12.vulkanMemoryModelDeviceScope = 1;
    float prio = 1; VkDeviceQueueCreateInfo q = {VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, 0, 0, 0, 1, &prio};
    VkDeviceCreateInfo dci = {VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, &f12, 0, 1, &q};
    VkDevice dev; if (vkCreateDevice(pd, &dci, 0, &dev)) return 3;
    VkShaderModuleCreateInfo smci = {VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, 0, 0, n, code};
    VkShaderModule sm; if (vkCreateShaderModule(dev, &smci, 0, &sm)) return 4;
    VkPushConstantRange pc = {VK_SHADER_STAGE_COMPUTE_BIT, 0, 128};
    VkPipelineLayoutCreateInfo plci = {VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, 0, 0, 0, 0, 1, &pc};
    VkPipelineLayout pl; vkCreatePipelineLayout(dev, &plci, 0, &pl);
    VkComputePipelineCreateInfo cpci = {VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
    cpci.stage = (VkPipelineShaderStageCreateInfo){VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, 0, 0,
        VK_SHADER_STAGE_COMPUTE_BIT, sm, argv[2]};
    cpci.layout = pl;
    VkPipeline pipe; VkResult r = vkCreateComputePipelines(dev, 0, 1, &cpci, 0, &pipe);
    printf("vkCreateComputePipelines: %d\n", r);
    return r != VK_SUCCESS;
}
