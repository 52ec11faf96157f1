//! The rule table: every rule's name, one-line description and documentation link.
//! BuildKit's rules keep BuildKit's names, descriptions and URLs (frontend/dockerfile/
//! linter/ruleset.go); rbuild's own hygiene rules link to their page in docs/checks/.

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// One of BuildKit's 22 rules, with BuildKit's conditions.
    Buildkit,
    /// rbuild's own image-hygiene rules (docs/checks/).
    Rbuild,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    /// BuildKit's documentation URL, or the rbuild docs page for rbuild's own rules.
    pub url: &'static str,
    /// Runs only when asked for (`# check=experimental=NAME` or `experimental=all`).
    pub experimental: bool,
    /// Stays a warning under `error=true`: advice that never fails a build.
    pub warning_only: bool,
    pub origin: Origin,
}

macro_rules! buildkit {
    ($id:ident, $name:literal, $slug:literal, $desc:literal) => {
        buildkit!($id, $name, $slug, $desc, false);
    };
    ($id:ident, $name:literal, $slug:literal, $desc:literal, $exp:literal) => {
        pub static $id: Rule = Rule {
            name: $name,
            description: $desc,
            url: concat!("https://docs.docker.com/go/dockerfile/rule/", $slug, "/"),
            experimental: $exp,
            warning_only: false,
            origin: Origin::Buildkit,
        };
    };
}

macro_rules! rbuild {
    ($id:ident, $name:literal, $desc:literal) => {
        rbuild!($id, $name, $desc, false);
    };
    ($id:ident, $name:literal, $desc:literal, $warning_only:literal) => {
        pub static $id: Rule = Rule {
            name: $name,
            description: $desc,
            url: concat!("docs/checks/", $name, ".md"),
            experimental: false,
            warning_only: $warning_only,
            origin: Origin::Rbuild,
        };
    };
}

buildkit!(
    STAGE_NAME_CASING,
    "StageNameCasing",
    "stage-name-casing",
    "Stage names should be lowercase"
);
buildkit!(
    FROM_AS_CASING,
    "FromAsCasing",
    "from-as-casing",
    "The 'as' keyword should match the case of the 'from' keyword"
);
buildkit!(
    NO_EMPTY_CONTINUATION,
    "NoEmptyContinuation",
    "no-empty-continuation",
    "Empty continuation lines will become errors in a future release"
);
buildkit!(
    CONSISTENT_INSTRUCTION_CASING,
    "ConsistentInstructionCasing",
    "consistent-instruction-casing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)"
);
buildkit!(
    DUPLICATE_STAGE_NAME,
    "DuplicateStageName",
    "duplicate-stage-name",
    "Stage names should be unique"
);
buildkit!(
    RESERVED_STAGE_NAME,
    "ReservedStageName",
    "reserved-stage-name",
    "Reserved words should not be used as stage names"
);
buildkit!(
    JSON_ARGS_RECOMMENDED,
    "JSONArgsRecommended",
    "json-args-recommended",
    "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals"
);
buildkit!(
    MAINTAINER_DEPRECATED,
    "MaintainerDeprecated",
    "maintainer-deprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
);
buildkit!(
    UNDEFINED_ARG_IN_FROM,
    "UndefinedArgInFrom",
    "undefined-arg-in-from",
    "FROM command must use declared ARGs"
);
buildkit!(
    WORKDIR_RELATIVE_PATH,
    "WorkdirRelativePath",
    "workdir-relative-path",
    "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes"
);
buildkit!(
    UNDEFINED_VAR,
    "UndefinedVar",
    "undefined-var",
    "Variables should be defined before their use"
);
buildkit!(
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    "MultipleInstructionsDisallowed",
    "multiple-instructions-disallowed",
    "Multiple instructions of the same type should not be used in the same stage"
);
buildkit!(
    LEGACY_KEY_VALUE_FORMAT,
    "LegacyKeyValueFormat",
    "legacy-key-value-format",
    "Legacy key/value format with whitespace separator should not be used"
);
/// BuildKit gives this rule no URL (it has no page in docs.docker.com): ours links to its
/// page in docs/checks/.
pub static INVALID_BASE_IMAGE_PLATFORM: Rule = Rule {
    name: "InvalidBaseImagePlatform",
    description: "Base image platform does not match expected target platform",
    url: "docs/checks/InvalidBaseImagePlatform.md",
    experimental: false,
    warning_only: false,
    origin: Origin::Buildkit,
};
buildkit!(
    REDUNDANT_TARGET_PLATFORM,
    "RedundantTargetPlatform",
    "redundant-target-platform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
);
buildkit!(
    SECRETS_USED_IN_ARG_OR_ENV,
    "SecretsUsedInArgOrEnv",
    "secrets-used-in-arg-or-env",
    "Sensitive data should not be used in the ARG or ENV commands"
);
buildkit!(
    INVALID_DEFAULT_ARG_IN_FROM,
    "InvalidDefaultArgInFrom",
    "invalid-default-arg-in-from",
    "Default value for global ARG results in an empty or invalid base image name"
);
buildkit!(
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    "FromPlatformFlagConstDisallowed",
    "from-platform-flag-const-disallowed",
    "FROM --platform flag should not use a constant value"
);
buildkit!(
    COPY_IGNORED_FILE,
    "CopyIgnoredFile",
    "copy-ignored-file",
    "Attempting to Copy file that is excluded by .dockerignore"
);
buildkit!(
    INVALID_DEFINITION_DESCRIPTION,
    "InvalidDefinitionDescription",
    "invalid-definition-description",
    "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.",
    true
);
buildkit!(
    EXPOSE_PROTO_CASING,
    "ExposeProtoCasing",
    "expose-proto-casing",
    "Protocol in EXPOSE instruction should be lowercase"
);
buildkit!(
    EXPOSE_INVALID_FORMAT,
    "ExposeInvalidFormat",
    "expose-invalid-format",
    "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release"
);

rbuild!(
    APT_LISTS_LEFT,
    "AptListsLeftInLayer",
    "Package lists downloaded by apt-get update should be removed in the same RUN"
);
rbuild!(
    APT_NO_INSTALL_RECOMMENDS,
    "AptNoInstallRecommends",
    "apt-get install should use --no-install-recommends",
    true
);
rbuild!(
    PIPE_WITHOUT_PIPEFAIL,
    "PipeWithoutPipefail",
    "A pipe in RUN hides failures of its first commands unless pipefail is set"
);
rbuild!(
    ADD_LOCAL_NON_ARCHIVE,
    "AddLocalNonArchive",
    "ADD of a local file that is not an archive should be COPY"
);
rbuild!(
    COPY_ALL_BEFORE_INSTALL,
    "CopyAllBeforeDependencyInstall",
    "Copying the whole context before installing dependencies reruns the install on every change"
);
rbuild!(
    SECRET_FILE_COPIED,
    "SecretFileCopied",
    "Files that look like keys or credentials should not be copied into a layer"
);

/// Every rule, BuildKit's first in BuildKit's order, then rbuild's own.
pub static RULES: [&Rule; 28] = [
    &STAGE_NAME_CASING,
    &FROM_AS_CASING,
    &NO_EMPTY_CONTINUATION,
    &CONSISTENT_INSTRUCTION_CASING,
    &DUPLICATE_STAGE_NAME,
    &RESERVED_STAGE_NAME,
    &JSON_ARGS_RECOMMENDED,
    &MAINTAINER_DEPRECATED,
    &UNDEFINED_ARG_IN_FROM,
    &WORKDIR_RELATIVE_PATH,
    &UNDEFINED_VAR,
    &MULTIPLE_INSTRUCTIONS_DISALLOWED,
    &LEGACY_KEY_VALUE_FORMAT,
    &INVALID_BASE_IMAGE_PLATFORM,
    &REDUNDANT_TARGET_PLATFORM,
    &SECRETS_USED_IN_ARG_OR_ENV,
    &INVALID_DEFAULT_ARG_IN_FROM,
    &FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    &COPY_IGNORED_FILE,
    &INVALID_DEFINITION_DESCRIPTION,
    &EXPOSE_PROTO_CASING,
    &EXPOSE_INVALID_FORMAT,
    &APT_LISTS_LEFT,
    &APT_NO_INSTALL_RECOMMENDS,
    &PIPE_WITHOUT_PIPEFAIL,
    &ADD_LOCAL_NON_ARCHIVE,
    &COPY_ALL_BEFORE_INSTALL,
    &SECRET_FILE_COPIED,
];

/// The rule called `name` (exact, as BuildKit compares skip lists).
pub fn find(name: &str) -> Option<&'static Rule> {
    RULES.iter().copied().find(|r| r.name == name)
}
